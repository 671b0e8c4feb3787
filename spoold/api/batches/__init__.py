"""/v1/batches: an API batch is an ordinary inbox job named by its batch id, plus a small owner record."""
