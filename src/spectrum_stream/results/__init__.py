"""Stage 6, results: the files other tools read (axolotl's JSON, the sorted view), written
atomically from the journal, and the selection of modules to train."""
