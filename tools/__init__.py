"""Developer tools that ship with no package: page screenshots, a scratch PostgreSQL."""
