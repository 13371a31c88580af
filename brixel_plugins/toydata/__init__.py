"""Small synthetic datasets written to disk in the frameworks' standard layouts (the demos'
embedded defaults): real photos as backgrounds, textured shapes pasted on them."""
