"""The lab's own environments and wrappers, registered with Gymnasium on import."""
