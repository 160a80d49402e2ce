"""Emails to the customer: composed from templates, queued with the order, sent once."""
