"""What the daemon tells the world: systemd notify, Prometheus metrics, GPU health, logs, handler runs; one facade (facade.Service) the loop talks to."""
