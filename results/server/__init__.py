"""The result Socket.IO server: streams results of their orders to result clients."""
