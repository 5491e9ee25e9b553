"""HTTP only: routes, request/response schemas, auth dependencies, error rendering."""
