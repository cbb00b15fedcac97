"""CLI command families, one module each; registered in compress.cli.COMMAND_MODULES."""
