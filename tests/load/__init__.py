"""`make loadtest`: locust, headless, against the gateway and Triton's ensemble (loopback)."""
