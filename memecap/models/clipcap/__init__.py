"""ClipCap: image encoder -> mapping network -> GPT-2 (ruGPT-3) decoder."""
