package setup

import (
	"go/ast"
	"go/parser"
	"go/token"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

// documentedDefault is the "Default X." a config field's doc comment ends
// with.
var documentedDefault = regexp.MustCompile(`Default (.+)\.\s*$`)

// TestDocumentedDefaults checks that every "Default X." in the doc comments
// of config.go's fields is the value DefaultConfig gives that field: the
// comments are what an operator reads in `go doc` and what the README's
// reference is written from.
func TestDocumentedDefaults(t *testing.T) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "config.go", nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	// The documented defaults of each struct's fields, by Go field name.
	docs := map[string]map[string]string{}
	ast.Inspect(f, func(n ast.Node) bool {
		ts, ok := n.(*ast.TypeSpec)
		if !ok {
			return true
		}
		st, ok := ts.Type.(*ast.StructType)
		if !ok {
			return false
		}
		for _, field := range st.Fields.List {
			m := documentedDefault.FindStringSubmatch(strings.TrimSpace(field.Doc.Text()))
			if m == nil || len(field.Names) != 1 {
				continue
			}
			if docs[ts.Name.Name] == nil {
				docs[ts.Name.Name] = map[string]string{}
			}
			docs[ts.Name.Name][field.Names[0].Name] = m[1]
		}
		return false
	})
	checked := 0
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		for i := range v.NumField() {
			sf, fv := v.Type().Field(i), v.Field(i)
			if fv.Kind() == reflect.Struct && sf.Type != reflect.TypeOf(Duration{}) {
				walk(fv)
				continue
			}
			doc, ok := docs[v.Type().Name()][sf.Name]
			if !ok {
				continue
			}
			checked++
			if got := defaultText(t, fv); got != doc {
				t.Errorf("%s.%s: the doc comment says Default %s, DefaultConfig gives %s", v.Type().Name(), sf.Name, doc, got)
			}
		}
	}
	walk(reflect.ValueOf(*DefaultConfig()))
	if checked == 0 {
		t.Fatal("no documented default found in config.go")
	}
}

// defaultText writes a default as config.go's comments do: "none" for an
// empty list, a duration in its shortest form, anything else as TOML
// writes it, unquoted.
func defaultText(t *testing.T, v reflect.Value) string {
	switch {
	case v.Kind() == reflect.Slice || v.Kind() == reflect.Map:
		if v.Len() == 0 {
			return "none"
		}
	case v.Type() == reflect.TypeOf(Duration{}):
		s := v.Interface().(Duration).String()
		if strings.HasSuffix(s, "m0s") {
			s = strings.TrimSuffix(s, "0s")
		}
		if strings.HasSuffix(s, "h0m") {
			s = strings.TrimSuffix(s, "0m")
		}
		return s
	case v.Kind() == reflect.Float64:
		return strconv.FormatFloat(v.Float(), 'g', -1, 64)
	}
	b, err := toml.Marshal(map[string]any{"v": v.Interface()})
	if err != nil {
		t.Fatal(err)
	}
	_, s, _ := strings.Cut(strings.TrimSpace(string(b)), "= ")
	return strings.Trim(s, `'"`)
}
