"""`krubench-report`: the finished runs grouped by configuration beside the paper's numbers (table.py), the paper's
own tables and figures row by row (paper_tables.py, from paper_numbers.yaml), learning-curve plots (plots.py)."""
