"""Data: loading and validating datasets, the packaged real assets, and the transfer set (`data.transfer`)."""
