"""Stage 7, trainers: applying a selection to a loaded model (freeze), for any training loop."""
