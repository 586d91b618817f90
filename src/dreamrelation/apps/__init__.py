"""Application helpers above the library (the web UI's data, training-job and export steps)."""
