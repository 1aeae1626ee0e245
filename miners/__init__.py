"""Mining: the Socket.IO mining server (`server/`) and the volunteer's client (`client/`)."""
