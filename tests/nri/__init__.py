"""A Python NRI plugin (a stub on crisp's ttrpc library) for the NRI tests."""
