"""The command lines: argparse lives here only; each handler parses, calls one function, prints."""
