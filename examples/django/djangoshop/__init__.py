"""A minimal Django shop that sends a receipt through pgqueue when an order is placed."""
