"""Between the codecs and the sessions: image preprocessing in, classification out."""
