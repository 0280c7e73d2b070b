"""densessl.ops"""
