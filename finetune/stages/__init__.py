"""One module per stage kind; each maps recipe fields onto a TRL config + trainer."""
