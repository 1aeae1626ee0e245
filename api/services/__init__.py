"""Business logic between the routes and the store."""
