"""Reporting: the results schema (`results.json`) and the Hub model card rendered from it."""
