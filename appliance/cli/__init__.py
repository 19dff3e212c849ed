"""The `appliance` command line: the top layer, built on everything below it."""
