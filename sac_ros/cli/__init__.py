"""The ``sac`` command-line tool."""
