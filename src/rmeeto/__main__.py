from rmeeto.cli import entry

entry()
