"""densessl.models"""
