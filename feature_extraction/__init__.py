"""Feature-store tools: conversion, multi-backbone concatenation, text token extraction."""
