"""The command line: parsing with the settings table's checks, the stage scripts' flags, and the edge that turns
errors into one line and an exit status (`run_cli`)."""
