"""The HTTP routes, one blueprint per area: thin views that parse, call a service, shape the answer."""
