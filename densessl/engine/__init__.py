"""densessl.engine"""
