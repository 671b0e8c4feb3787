"""What a person or the API asks of the spool from outside the daemon: submit, wait, cancel and requeue, status."""
