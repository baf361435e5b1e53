"""RuDOLPH (ai-forever): left text, image as VQGAN codes, right text = the caption."""
