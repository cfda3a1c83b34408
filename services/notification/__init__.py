"""Notification Service: client event streams in every region."""
