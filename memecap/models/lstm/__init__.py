"""The original meme project's CNN + LSTM baselines."""
