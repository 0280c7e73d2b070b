"""densessl.eval"""
