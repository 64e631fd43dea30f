"""What arrives over NATS: the worker and its slots, one job attempt from request to
final event, the events it publishes, and the champion lock shared by every Trainer."""
