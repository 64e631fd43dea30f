"""The only MLflow client: runs and what they hold, the registry and the champion
alias, recovery of what an earlier attempt registered, and the credentials."""
