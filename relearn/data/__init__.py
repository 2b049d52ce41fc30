"""Reading and checking input data files."""
