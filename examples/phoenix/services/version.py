"""Version of the whole Phoenix system; each release overlay replaces this file."""

VERSION = "1.0.0"
