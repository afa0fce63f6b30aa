// Command gotemplate renders a Go text/template the way Ollama fills a Modelfile TEMPLATE: with Go's own
// text/template package, not a re-implementation. The tests build it (`go build`) and check that the
// Modelfile's TEMPLATE, filled with the values Ollama's /api/chat hands it, gives the HF chat template's prompt.
//
// Reads one JSON object on stdin, {"template": "...", "data": {...}}; writes the rendered text to stdout.
// A template that does not parse or execute is one line on stderr and exit code 2.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/template"
)

type request struct {
	Template string         `json:"template"`
	Data     map[string]any `json:"data"`
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fail("reading the request: %v", err)
	}
	tmpl, err := template.New("TEMPLATE").Option("missingkey=error").Parse(req.Template)
	if err != nil {
		fail("%v", err)
	}
	if err := tmpl.Execute(os.Stdout, req.Data); err != nil {
		fail("%v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "gotemplate: "+format+"\n", args...)
	os.Exit(2)
}
