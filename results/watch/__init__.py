"""The watcher: what each result of an order shows — its extracted value, whether it changed since the
previous valid result, and the diff — observed in n order after results are recorded.

It consumes what mining servers record (the result-notice stream) rather than sitting in their
write path, and runs inside every result server (`results.server.app`), whose deliveries also
observe an order before they send its results, so a result client gets the extracted value and
the change next to each page.
"""
