"""One module per `llm4msr` subcommand; each exposes `register(subparsers)`."""
