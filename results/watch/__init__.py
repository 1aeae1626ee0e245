"""The watcher: what each result of an order shows — its extracted value, whether it changed since the
previous valid result, and the diff — observed in n order after results are recorded.

It consumes what mining servers record (the result-notice stream) rather than sitting in their
write path, and runs inside every result server (`results.server.app`). A delivery of an order
with an extraction, or to a client that writes changes only, observes each batch before it sends
it (`observer.observe_ready`: one store read when the watcher got there first), so the client gets
the extracted value and the change next to each page.
"""
