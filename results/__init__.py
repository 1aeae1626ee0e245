"""Result delivery: the result Socket.IO server (`server/`) and the customer's result client (`client/`)."""
