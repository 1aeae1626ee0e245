"""The customer's result client: writes every result of their orders to local files."""
