"""`llmc report SAVE_DIR...`: compare finished runs in one table (markdown or CSV) and plots."""
