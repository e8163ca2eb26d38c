"""MLPerf compliance around the training code: the official checkers, the time-to-train summary and the
submission tree. Reads logs only; never imports the training code."""
