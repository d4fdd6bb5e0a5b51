"""The sync relay: `server` forwards frames between the two sides of each room,
`limits` bounds what anonymous clients can make it hold."""
