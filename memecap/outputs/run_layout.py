"""Names of the files a training run writes that other commands read, so that the writer and the
readers agree without one importing the other: `memecap caption` tells a checkpoint from an
export by its trainer state, and `memecap push` reads the scores beside an export for the card."""

STATE_FILE = "trainer_state.json"  # in each checkpoint folder: counters, data position, best score, history
EVALUATION_FILE = "eval.json"  # beside an export (best/, final/): the evaluation that scored it
# In the run folder: what a model family builds its model from besides its config (tiny bases made for
# the run, the LSTM's word vocabulary), so a run that starts from another's weights can take them along.
LSTM_VOCAB_FILE = "lstm_vocab.json"
MODEL_FILES = ("base_models", LSTM_VOCAB_FILE)
