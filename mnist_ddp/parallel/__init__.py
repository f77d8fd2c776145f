"""Running as many processes: launch environment, process group, rendezvous, liveness, agreement."""
