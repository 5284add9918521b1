"""Chats in Retell's shape: the model, the store and its commit script, listing, lifecycle events, delivery."""
