"""What leaves the run: Hub upload, the model card, the HTML report and its charts."""
